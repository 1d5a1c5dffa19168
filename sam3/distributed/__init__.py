"""Distributed concerns: process-group environment, frame groups and the video inference schedule over
them, reductions, collectives."""
