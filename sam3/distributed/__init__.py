"""Distributed concerns: process-group environment, frame sharding, reductions."""
