"""bgl.train: warm start, bilevel phase, schedules, checkpoints."""
