"""Synthetic BigEarthNet archives in the exact real format (`bigearth synth`)."""
