"""ragkit: context-budget RAG."""
