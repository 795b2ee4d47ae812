import threading

from lungseg.inference.budget import PixelBudget


def test_pixel_budget_lets_an_oversized_image_through_alone_and_never_overfills_without_waiting():
    budget = PixelBudget(10)
    assert budget.take(6) and budget.take(4, wait=False)
    assert not budget.take(1, wait=False)
    budget.give(10)
    assert not budget.take(11, wait=False)  # a kept copy never goes over
    assert budget.take(50) and budget.used == 50  # alone, it may: else it would wait forever
    assert not budget.take(1, wait=False)
    budget.give(50)
    assert budget.used == 0


def test_a_waiting_take_goes_on_once_enough_is_given_back():
    budget = PixelBudget(10)
    budget.take(7)
    taken = threading.Event()
    waiter = threading.Thread(target=lambda: (budget.take(5), taken.set()))
    waiter.start()
    assert not taken.wait(0.2), "5 more pixels do not fit beside 7 of 10"
    budget.give(7)
    assert taken.wait(10)
    waiter.join()
    assert budget.used == 5
