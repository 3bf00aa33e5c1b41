defmodule ClusterSRV.Harness.DNSMessage do
  @moduledoc """
  Just enough of the DNS wire format (RFC 1035) for the harness's own servers: read a query's
  question, take an answer apart into its records, and put a changed answer back together.

      {:ok, message} = ClusterSRV.Harness.DNSMessage.parse(bytes)
      message.qname        #=> "myapp-headless.default.svc.cluster.local"
      message.qtype        #=> :srv
      for rr <- message.answers, rr.type == :srv, do: ClusterSRV.Harness.DNSMessage.srv_target(message, rr)
      ClusterSRV.Harness.DNSMessage.encode(%{message | additional: []})

  Names are followed through compression pointers (bounded, so a pointer loop ends), and each
  record keeps its bytes as they came. `encode/1` writes the records it is given in that order:
  the records of the answer and authority sections as they came, which is right as long as only
  records after them are left out (their compression pointers point backwards), and those of
  the additional section with their owner names written out in full, so that leaving some of
  them out breaks no pointer of the others (the harness never keeps an additional record
  whose data holds a name).
  """

  import Bitwise

  defstruct [
    :id,
    :flags,
    :question,
    :qname,
    :qtype,
    :bytes,
    answers: [],
    authority: [],
    additional: []
  ]

  @type rr :: %{
          type: atom() | non_neg_integer(),
          name: String.t(),
          offset: non_neg_integer(),
          size: pos_integer(),
          rdata_offset: non_neg_integer(),
          rdlength: non_neg_integer()
        }

  @type t :: %__MODULE__{
          id: non_neg_integer(),
          flags: non_neg_integer(),
          question: binary(),
          qname: String.t(),
          qtype: atom() | non_neg_integer(),
          bytes: binary(),
          answers: [rr()],
          authority: [rr()],
          additional: [rr()]
        }

  @types %{1 => :a, 2 => :ns, 5 => :cname, 6 => :soa, 28 => :aaaa, 33 => :srv, 41 => :opt}
  @codes Map.new(@types, fn {code, type} -> {type, code} end)

  @rcodes %{noerror: 0, formerr: 1, servfail: 2, nxdomain: 3, notimp: 4, refused: 5}

  # Compression pointers one name may follow before it is taken as a loop.
  @max_pointers 32

  @doc "The wire code of a record type (`:srv` is 33)."
  def type_code(type) when is_atom(type), do: Map.fetch!(@codes, type)

  @doc """
  Parses a message with exactly one question: `{:ok, message}` or `:error`. `qname` is
  lowercase and has no trailing dot.
  """
  @spec parse(binary()) :: {:ok, t()} | :error
  def parse(<<id::16, flags::16, 1::16, an::16, ns::16, ar::16, _::binary>> = bytes) do
    with {:ok, qname, qend} <- read_name(bytes, 12),
         <<_::binary-size(qend), qtype::16, _class::16, _::binary>> <- bytes,
         {:ok, answers, offset} <- read_rrs(bytes, qend + 4, an, []),
         {:ok, authority, offset} <- read_rrs(bytes, offset, ns, []),
         {:ok, additional, _offset} <- read_rrs(bytes, offset, ar, []) do
      {:ok,
       %__MODULE__{
         id: id,
         flags: flags,
         question: binary_part(bytes, 12, qend + 4 - 12),
         qname: String.downcase(qname, :ascii),
         qtype: Map.get(@types, qtype, qtype),
         bytes: bytes,
         answers: answers,
         authority: authority,
         additional: additional
       }}
    else
      _ -> :error
    end
  end

  def parse(_bytes), do: :error

  @doc "The response code of a message, as an atom where it has one (`:nxdomain`)."
  def rcode(%__MODULE__{flags: flags}) do
    code = flags &&& 0xF
    Enum.find_value(@rcodes, code, fn {name, value} -> if value == code, do: name end)
  end

  @doc "Whether the message has the TC (truncated) bit set."
  def truncated?(%__MODULE__{flags: flags}), do: (flags &&& 0x0200) != 0

  @doc "The target of an SRV record of `message`, lowercase, without the trailing dot."
  def srv_target(%__MODULE__{bytes: bytes}, %{type: :srv, rdata_offset: offset}) do
    case read_name(bytes, offset + 6) do
      {:ok, name, _} -> String.downcase(name, :ascii)
      :error -> nil
    end
  end

  @doc """
  The message with its response code set to `rcode` (an atom of `rcode/1`) and, with
  `truncated: true`, its TC bit set. Its records are left as they are.
  """
  def with_rcode(%__MODULE__{flags: flags} = message, rcode, opts \\ []) do
    flags = (flags &&& ~~~0xF) ||| Map.fetch!(@rcodes, rcode)
    flags = if opts[:truncated], do: flags ||| 0x0200, else: flags &&& ~~~0x0200
    %{message | flags: flags}
  end

  @doc "Writes the message back to bytes (see the moduledoc for how records are written)."
  @spec encode(t()) :: binary()
  def encode(%__MODULE__{bytes: bytes} = message) do
    kept = fn rrs -> Enum.map(rrs, &binary_part(bytes, &1.offset, &1.size)) end

    additional =
      Enum.map(message.additional, fn rr ->
        rest = binary_part(bytes, rr.rdata_offset - 10, 10 + rr.rdlength)
        encode_name(rr.name) <> rest
      end)

    IO.iodata_to_binary([
      header(
        message.id,
        message.flags,
        1,
        length(message.answers),
        length(message.authority),
        length(message.additional)
      ),
      message.question,
      kept.(message.answers),
      kept.(message.authority),
      additional
    ])
  end

  @doc "A query for `name` and `type` (`:srv`, `:a`, ...), recursion desired, with no EDNS."
  def query(id, name, type),
    do: header(id, 0x0100, 1, 0, 0, 0) <> encode_name(name) <> <<type_code(type)::16, 1::16>>

  @doc "A message header."
  def header(id, flags, qd, an, ns, ar),
    do: <<id::16, flags::16, qd::16, an::16, ns::16, ar::16>>

  @doc "A name in wire form, uncompressed: `encode_name(\"a.b\")` is `<<1, ?a, 1, ?b, 0>>`."
  def encode_name(name) do
    labels = name |> String.trim_trailing(".") |> String.split(".", trim: true)
    encode_labels(labels) <> <<0>>
  end

  @doc "Labels in wire form, each with its length, with no terminating root label."
  def encode_labels(labels),
    do: labels |> Enum.map(&<<byte_size(&1)::8, &1::binary>>) |> IO.iodata_to_binary()

  @doc """
  Reads the name at `offset`, following compression pointers: `{:ok, name, end_offset}`, where
  `end_offset` is just past the name where it started (not where a pointer led), or `:error`.
  """
  def read_name(bytes, offset), do: read_name(bytes, offset, [], nil, 0)

  defp read_name(_bytes, _offset, _labels, _end, pointers) when pointers > @max_pointers,
    do: :error

  defp read_name(bytes, offset, labels, end_offset, pointers) do
    case bytes do
      <<_::binary-size(offset), 0, _::binary>> ->
        {:ok, labels |> Enum.reverse() |> Enum.join("."), end_offset || offset + 1}

      <<_::binary-size(offset), 0b11::2, pointer::14, _::binary>> ->
        read_name(bytes, pointer, labels, end_offset || offset + 2, pointers + 1)

      <<_::binary-size(offset), length, label::binary-size(length), _::binary>>
      when length < 64 ->
        read_name(bytes, offset + 1 + length, [label | labels], end_offset, pointers)

      _ ->
        :error
    end
  end

  defp read_rrs(_bytes, offset, 0, acc), do: {:ok, Enum.reverse(acc), offset}

  defp read_rrs(bytes, offset, count, acc) do
    with {:ok, name, name_end} <- read_name(bytes, offset),
         <<_::binary-size(name_end), type::16, _class::16, _ttl::32, rdlength::16,
           _rdata::binary-size(rdlength), _::binary>> <- bytes do
      rr = %{
        type: Map.get(@types, type, type),
        name: name,
        offset: offset,
        size: name_end + 10 + rdlength - offset,
        rdata_offset: name_end + 10,
        rdlength: rdlength
      }

      read_rrs(bytes, name_end + 10 + rdlength, count - 1, [rr | acc])
    else
      _ -> :error
    end
  end
end
