import numpy as np
import pandas as pd

from mlflow_persist.trading import cob
from mlflow_persist.trading.market import MarketData


def test_book_is_deterministic_per_seed_and_position() -> None:
    a, b, c = MarketData(seed=7), MarketData(seed=7), MarketData(seed=8)
    position = a.first + 123
    pd.testing.assert_frame_equal(a.book(position), b.book(position))
    # visiting other bars first changes nothing
    b.book(position + 5)
    pd.testing.assert_frame_equal(a.book(position), b.book(position))
    assert not a.book(position).equals(c.book(position))


def test_book_shape_and_invariants() -> None:
    market = MarketData(seed=1)
    for position in range(market.first, market.first + 200, 7):
        book = market.book(position)
        assert list(book.columns) == list(cob.COB_COLUMNS)
        assert len(book) == cob.DEFAULT_LEVELS
        assert (book["bid_price"] < book["ask_price"]).all()
        assert book["bid_price"].is_monotonic_decreasing and book["ask_price"].is_monotonic_increasing
        assert (book[["bid_size", "ask_size"]] > 0).all().all()
        assert -1.0 <= cob.imbalance(book) <= 1.0
        close = market.frame["close"].iloc[position]
        assert np.isclose((book["bid_price"].iloc[0] + book["ask_price"].iloc[0]) / 2, close)
        assert cob.spread(book) >= cob.MIN_SPREAD * 0.5
