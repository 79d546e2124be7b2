"""`smsuper train`: the user's training code under the SageMaker training contract.

The decisions live in small pure modules (entrypoint: what to run; launch:
argv, environment, cwd; distributed: torchrun and rendezvous variables;
requirements: the pip run; failure: the failure reason) and `job` executes
them through the init's lifecycle (init/lifecycle.py). See docs/training.md
for the behaviour.
"""
