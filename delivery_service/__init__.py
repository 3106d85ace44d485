"""Delivery workers: take delivery tasks from the ``deliveries`` stream, POST them signed to the subscribers'
callbacks, record every attempt, and retry, dead-letter or disable as the outcome says."""
