"""transfer-bench: does intermediate-task training help, and does the gain survive domain and language shift?"""
__version__ = "0.1.0"
