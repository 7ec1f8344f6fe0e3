"""The budgeted joint search over partitions, fusion, layouts and schedules (issue 14)."""
