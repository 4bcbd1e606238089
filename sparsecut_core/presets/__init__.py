"""Presets (`presets/*.toml`): reading them, building the model they describe, and where a training stage starts."""
