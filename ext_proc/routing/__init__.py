"""Which backend goes first: policies, header/metadata rules, cooldowns and latency averages."""
