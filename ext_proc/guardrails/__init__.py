"""Guardrails per route: PII detection and redaction, deny-lists and regexes, prompt size and message count."""
