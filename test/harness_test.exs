defmodule ClusterSRV.HarnessTest do
  use ExUnit.Case, async: true
  doctest ClusterSRV.Harness.Zone
  doctest Cluster.Strategy.State
end
