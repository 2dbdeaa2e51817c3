"""What both programs share that is neither the model runtime nor the wire contract: loading a
YAML config file into a pydantic model, the command-line options and logging set-up, and the code
version recorded on every result."""
