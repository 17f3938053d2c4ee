"""What the gateway keeps between requests on a client's behalf (limits and cooldowns aside): stored Responses."""
