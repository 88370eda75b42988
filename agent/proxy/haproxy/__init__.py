"""The frontend's HAProxy: view model, process, runtime API, server slots, certificates."""
