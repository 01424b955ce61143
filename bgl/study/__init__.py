"""bgl.study: Ray Train workers, Ray Tune + Optuna search, study YAML schema."""
