"""Versioned prompt templates: their syntax (`syntax`), rendering (`render`), where the admin API stores them
(`store`) and the registry a runtime resolves them with (`registry`). The request side is
`stages/prompt_templates.py`."""
