"""edgetrain: on-device training for microcontrollers, embedded boards and phones."""
