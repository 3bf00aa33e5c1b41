defmodule ClusterSRV.Record do
  @moduledoc """
  One SRV record of an answer, as `ClusterSRV.Resolver.lookup/2` returns it.

    * `:priority`, `:weight`, `:port` - the SRV fields, as integers.
    * `:ttl` - the record's time to live, in seconds.
    * `:target` - the target host, lowercase and without its trailing dot. It is always a binary:
      no atom is made from DNS data. Bytes that cannot stand in a host name are kept as RFC 1035
      decimal escapes, such as `"a\\\\032b.example"` for a label holding a space.
    * `:addresses` - the target's addresses from the answer's additional section, as
      `:inet.ip_address()` tuples; `[]` when the server sent none.

  ## Example

      iex> record = %ClusterSRV.Record{
      ...>   priority: 0,
      ...>   weight: 33,
      ...>   port: 4370,
      ...>   ttl: 5,
      ...>   target: "myapp-0.myapp-headless.default.svc.cluster.local",
      ...>   addresses: [{127, 0, 0, 10}]
      ...> }
      iex> record.target
      "myapp-0.myapp-headless.default.svc.cluster.local"
  """

  @enforce_keys [:priority, :weight, :port, :ttl, :target]
  defstruct [:priority, :weight, :port, :ttl, :target, addresses: []]

  @type t :: %__MODULE__{
          priority: 0..65_535,
          weight: 0..65_535,
          port: 0..65_535,
          ttl: non_neg_integer(),
          target: String.t(),
          addresses: [:inet.ip_address()]
        }
end
