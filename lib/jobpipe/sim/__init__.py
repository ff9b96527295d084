"""Fakes of the external HTTP services (Ollama, BA API, Signal gateway), free of pytest."""
