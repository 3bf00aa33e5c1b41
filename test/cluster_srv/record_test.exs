defmodule ClusterSRV.RecordTest do
  use ExUnit.Case, async: true
  doctest ClusterSRV.Record

  test "a record needs its SRV fields and defaults to no addresses" do
    assert_raise ArgumentError, fn -> struct!(ClusterSRV.Record, priority: 0) end

    record = struct!(ClusterSRV.Record, priority: 0, weight: 1, port: 2, ttl: 3, target: "a")
    assert record.addresses == []
  end
end
