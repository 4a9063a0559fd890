"""Search over schedules: design-space rules, search strategies, cost models, task scheduling."""
