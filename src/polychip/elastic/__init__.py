"""Elastic training: a supervisor above the runtime that re-plans when chips die
(:mod:`polychip.elastic.supervisor`). The one layer that may call both the planner and the
runtime; the runtime itself never plans."""
