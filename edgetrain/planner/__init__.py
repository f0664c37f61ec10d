"""Planning: the frozen, JSON-serialisable Plan and the solvers that produce it. No torch.

`Problem` is one planning problem (a graph on a device under a budget), `SOLVERS` maps each
solver's name to `solver(problem) -> Evaluation`, and `ExecutorMemory` is how an executor with
its own memory layout answers the planner (NOTE [ Asking an executor for its memory ]).
"""

from edgetrain.errors import PlanInfeasibleError
from edgetrain.planner._executor import (
    CandidateMemory,
    CandidateUnsupportedError,
    ExecutorMemory,
    MemoryRequest,
    PlanRunner,
    ProgramMemory,
    StepRequest,
)
from edgetrain.planner._plan import (
    PLAN_SCHEMA_VERSION,
    ActivationDecision,
    Executor,
    Objective,
    ParamDecision,
    ParamPlan,
    Plan,
    Precision,
    Prediction,
    StagePlan,
    Strategy,
    TimelineSample,
    check_plan_matches_model,
    trusted_model_spec,
)
from edgetrain.planner._problem import Evaluation, Problem
from edgetrain.planner._solvers import BASELINES, SOLVERS, Solver, milp_solver
from edgetrain.planner._stages import valid_depths

__all__ = [
    "BASELINES",
    "PLAN_SCHEMA_VERSION",
    "SOLVERS",
    "ActivationDecision",
    "CandidateMemory",
    "CandidateUnsupportedError",
    "Evaluation",
    "Executor",
    "ExecutorMemory",
    "MemoryRequest",
    "Objective",
    "ParamDecision",
    "ParamPlan",
    "Plan",
    "PlanRunner",
    "PlanInfeasibleError",
    "Precision",
    "Prediction",
    "Problem",
    "ProgramMemory",
    "Solver",
    "StagePlan",
    "StepRequest",
    "Strategy",
    "TimelineSample",
    "milp_solver",
    "check_plan_matches_model",
    "trusted_model_spec",
    "valid_depths",
]
