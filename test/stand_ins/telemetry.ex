# Compiled for the test environment only (see mix.exs).
defmodule :telemetry do
  @moduledoc false
  # A stand-in for the telemetry library, which only hex carries. It routes each event to the
  # test that registered the event's topology; the strategy calls it as it would the real one.
  def execute(event, measurements, metadata) do
    case :persistent_term.get({:telemetry_stand_in, metadata[:topology]}, nil) do
      nil -> :ok
      pid -> send(pid, {:telemetry, event, measurements, metadata})
    end

    :ok
  end
end
