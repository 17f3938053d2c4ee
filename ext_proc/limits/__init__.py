"""Token, request and spend limits: the limiter, its counter stores (in-process and Redis) and the price table."""
