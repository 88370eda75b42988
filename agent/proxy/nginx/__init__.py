"""The machine's nginx: view model, process and service ports."""
