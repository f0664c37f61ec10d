"""Planning: the frozen, JSON-serialisable Plan and the solvers that produce it. No torch."""

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
)

__all__ = ["PLAN_SCHEMA_VERSION", "ActivationDecision", "Executor", "Objective", "ParamDecision", "ParamPlan",
           "Plan", "Precision", "Prediction", "StagePlan", "Strategy", "TimelineSample"]
