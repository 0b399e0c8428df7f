"""Deployment: tickets (find, load safely, strip masks) and TFLite export with LiteRT checks."""
