"""The spam model in service: features (shared with training/) and model loading."""
