"""Dead letters: the DLQ consumer that stores them and the service operators use on them."""
