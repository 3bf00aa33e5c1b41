defmodule ClusterSRV.Bench.Stats do
  @moduledoc """
  Small statistics for benchmark samples.

      iex> ClusterSRV.Bench.Stats.median([5, 1, 3])
      3
      iex> ClusterSRV.Bench.Stats.median([4, 1, 3, 2])
      2.5
      iex> ClusterSRV.Bench.Stats.percentile(Enum.to_list(1..100), 90)
      90
  """

  def median([]), do: nil

  def median(samples) do
    sorted = Enum.sort(samples)
    n = length(sorted)
    mid = div(n, 2)

    if rem(n, 2) == 1,
      do: Enum.at(sorted, mid),
      else: (Enum.at(sorted, mid - 1) + Enum.at(sorted, mid)) / 2
  end

  def percentile(samples, p) do
    sorted = Enum.sort(samples)
    index = max(0, ceil(length(sorted) * p / 100) - 1)
    Enum.at(sorted, index)
  end

  @doc "Times `fun` once, in microseconds (float)."
  def time_us(fun) do
    started = System.monotonic_time()
    fun.()
    System.convert_time_unit(System.monotonic_time() - started, :native, :nanosecond) / 1000
  end

  @doc "A ratio with two decimals, as text: `\"2.31×\"`."
  def ratio(a, b) when is_number(a) and is_number(b) and b > 0, do: "#{Float.round(a / b, 2)}×"
  def ratio(_, _), do: "n/a"

  def round(nil), do: "n/a"
  def round(x) when is_float(x), do: Float.round(x, 1)
  def round(x), do: x
end
