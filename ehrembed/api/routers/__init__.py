"""One router per resource; each composes library functions and holds no logic of its own."""
