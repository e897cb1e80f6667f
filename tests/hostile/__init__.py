"""Hostile input, faults and load against real servers on 127.0.0.1."""
