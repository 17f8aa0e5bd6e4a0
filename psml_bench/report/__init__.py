"""From results to the leaderboard: intervals, ranking, comparisons, tables, figures, web page."""
