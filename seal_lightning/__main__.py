from .cli import main

if __name__ == "__main__":  # spawned workers (vLLM on CPU) import this module again
    main()
