"""Sans-I/O decision cores: plain classes that take events and return decisions.

Nothing under ``corral.core`` imports asyncio, NATS or the store; time is passed in.
"""
