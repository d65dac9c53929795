"""The reference's first examples, as a user would write them.

Run it against a daemon: ``chalkd serve & python -m chalkd.examples.hello``.
"""

import chalkcompute


@chalkcompute.function
def add(x: int, y: int) -> int:
    return x + y


@chalkcompute.function
async def count_to(n: int):
    for i in range(1, n + 1):
        yield {"i": i, "square": i * i}


@chalkcompute.function
def divide(a: float, b: float) -> float:
    return a / b


@chalkcompute.function
async def fragile_gen():
    yield "ok-1"
    yield "ok-2"
    raise ValueError("something went wrong")


if __name__ == "__main__":
    add.wait_ready()
    result = add(3, 5)
    print(result)  # 8

    for chunk in count_to(3):
        print(chunk)

    divide.wait_ready()
    try:
        divide(1.0, 0.0)
    except RuntimeError as e:
        print(e)  # ZeroDivisionError: float division by zero

    try:
        for item in fragile_gen():
            print(item)
    except RuntimeError as e:
        print(f"RuntimeError: {e}")
