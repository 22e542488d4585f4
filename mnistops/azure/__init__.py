"""The Azure ML backend (azure-ai-ml v2). The SDK is imported inside the functions that need it."""
