"""The vocabulary every process shares: resources and how requests fit them, labels and selectors.
Imports nothing else of the runtime.
"""
