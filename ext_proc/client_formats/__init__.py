"""Client-side API formats other than OpenAI chat completions.

The gateway's canonical format is OpenAI chat completions: providers translate from and to it. A client format module
translates a non-OpenAI client's request into that canonical form and the canonical answer (JSON and streamed chunks)
back into the client's own format, so every client format reaches every provider. Like the provider modules, each is
pure functions over dicts: no I/O, no globals.

- `anthropic_messages`: Anthropic Messages clients of `POST /anthropic/v1/messages`.
- `responses_request`, `responses_answer`, `responses_stream` (sharing `responses_common`): OpenAI Responses API
  clients of `POST /v1/responses` (Codex, the OpenAI Agents SDK): the request in the chat form, and the chat answer
  back as a Response or its typed event stream.
- `openai_chat`: the shape check of the canonical form itself.
"""
