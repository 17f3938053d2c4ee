"""The runtime: a configuration compiled into the frozen tables the hot path reads (routes, keys, backends with their
credentials, the limiter, telemetry), built once and swapped as a whole on reload. It sits above every layer it
builds from (config, auth, limits, routing, providers, telemetry), which is why it is not part of `config/`."""
