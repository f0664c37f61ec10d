"""The README written beside an exported program: loading and training it from C++."""

from __future__ import annotations

__all__ = ["readme"]


def _shape(spec: dict) -> str:
    return "x".join(map(str, spec.get("shape", []))) or "scalar"


def readme(manifest: dict) -> str:
    """Markdown for the export folder, from its manifest (so it names the real shapes)."""
    plan, opt, mem = manifest["plan"], manifest["optimizer"], manifest["memory"]
    x, y = manifest["inputs"][:2]
    et = mem["executorch"]
    opts = f"{opt['lr']:g}, {opt['momentum']:g}, {opt['dampening']:g}, {opt['weight_decay']:g}"
    return f"""# {plan["model"]}: on-device training with ExecuTorch

Exported by `edgetrain export` for `{plan["device"]}`, batch {plan["batch_size"]}, loss
{plan["loss"]}; {len(manifest["trainable"])} tensors train, {manifest["frozen_tensors"]} are
constants. Method `{manifest["method"]}(x, y)`: x {_shape(x)} {x.get("dtype")}, y {_shape(y)}
{y.get("dtype")}; returns the loss, the model's output, then one gradient per trainable tensor.

Memory: ExecuTorch plans {et["planned_bytes"]:,} B (activations, batch, gradients, trainable
weights), constants {et["constant_bytes"]:,} B, optimizer state {et["optimizer_state_bytes"]:,} B:
{et["total_bytes"]:,} B in all; edgetrain predicted {mem["predicted_peak_bytes"]:,} B
(`manifest.json`, `memory`).

```cpp
#include <executorch/extension/data_loader/file_data_loader.h>
#include <executorch/extension/tensor/tensor.h>
#include <executorch/extension/training/module/training_module.h>
#include <executorch/extension/training/optimizer/sgd.h>

using executorch::extension::FileDataLoader;
using executorch::extension::training::TrainingModule;
using executorch::extension::training::optimizer::SGD;
using executorch::extension::training::optimizer::SGDOptions;

auto program = std::make_unique<FileDataLoader>(FileDataLoader::from("model.pte").get());
auto weights = std::make_unique<FileDataLoader>(FileDataLoader::from("model.ptd").get());
// the .ptd is the module's named-data loader (ExecuTorch 1.x: the argument after the
// allocators and the event tracer)
TrainingModule mod(std::move(program), nullptr, nullptr, nullptr, std::move(weights));

SGD optimizer(mod.named_parameters("forward").get(),
              SGDOptions{{{opts}}});  // lr, momentum, dampening, weight decay
for (auto& [x, y] : batches) {{  // TensorPtr pairs shaped as above
  auto out = mod.execute_forward_backward("forward", {{*x, *y}});
  float loss = out.get()[0].toTensor().const_data_ptr<float>()[0];
  optimizer.step(mod.named_gradients("forward").get());
}}
```

From Python: `edgetrain.export.load_program("DIR")` (ExecuTorch's Python runtime), or
ExecuTorch's `_load_for_executorch(pte, ptd)` wrapped in `TrainingModule`.
"""
