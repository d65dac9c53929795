"""Long-running containers for the SDK's ``Container`` API and the client of their in-container agent."""
