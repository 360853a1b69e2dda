"""`python -m shared.cli`: agentctl without installing the project."""

from shared.cli.main import app

if __name__ == "__main__":
    app()
