def fibonacci(n: int) -> int:
    """Return the n-th Fibonacci number."""
    if n < 2:
        return n
    return 


def main() -> None:
    for n in range(10):
        print(n, fibonacci(n))
