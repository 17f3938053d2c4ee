"""Client-side API formats other than OpenAI chat completions.

The gateway's canonical format is OpenAI chat completions: providers translate from and to it. A client format module
translates a non-OpenAI client's request into that canonical form and the canonical answer (JSON and streamed chunks)
back into the client's own format, so every client format reaches every provider. Like the provider modules, each is
pure functions over dicts: no I/O, no globals.

- `anthropic_messages`: Anthropic Messages clients of `POST /anthropic/v1/messages`.
"""
