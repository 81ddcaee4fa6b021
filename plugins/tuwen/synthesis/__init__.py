"""Synthesis: keys and params, planning and task assignment, the batch runner, the VLM client, prompts, parsing."""
