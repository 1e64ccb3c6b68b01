"""What the platform computes, free of I/O: readings, rules, rollups, sketches, times."""
