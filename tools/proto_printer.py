"""Print a FileDescriptorProto back as .proto source that protoc compiles to the same descriptor.

Declaration order is kept wherever it reaches the descriptor: fields, nested types (a map
field's entry type is created where the field is parsed, so fields and nested messages are
interleaved to reproduce it), enums, values, oneofs, reserved ranges and names, services and
methods. Anything this printer cannot express faithfully (groups, custom options, editions,
unknown option fields) raises ``UnsupportedProto`` instead of being dropped.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.unknown_fields import UnknownFieldSet

FieldProto = descriptor_pb2.FieldDescriptorProto
DescriptorProto = descriptor_pb2.DescriptorProto
EnumProto = descriptor_pb2.EnumDescriptorProto

INDENT = "  "
MESSAGE_MAX_NUMBER = 536870912  # exclusive end of "to max" in a message reserved/extension range
ENUM_MAX_NUMBER = 2147483647  # inclusive end of "to max" in an enum reserved range

SCALAR_TYPES = {
    FieldProto.TYPE_DOUBLE: "double", FieldProto.TYPE_FLOAT: "float",
    FieldProto.TYPE_INT64: "int64", FieldProto.TYPE_UINT64: "uint64",
    FieldProto.TYPE_INT32: "int32", FieldProto.TYPE_FIXED64: "fixed64",
    FieldProto.TYPE_FIXED32: "fixed32", FieldProto.TYPE_BOOL: "bool",
    FieldProto.TYPE_STRING: "string", FieldProto.TYPE_BYTES: "bytes",
    FieldProto.TYPE_UINT32: "uint32", FieldProto.TYPE_SFIXED32: "sfixed32",
    FieldProto.TYPE_SFIXED64: "sfixed64", FieldProto.TYPE_SINT32: "sint32",
    FieldProto.TYPE_SINT64: "sint64",
}
LABELS = {
    FieldProto.LABEL_OPTIONAL: "optional", FieldProto.LABEL_REQUIRED: "required",
    FieldProto.LABEL_REPEATED: "repeated",
}


class UnsupportedProto(ValueError):
    """The descriptor uses a feature this printer does not reproduce."""


def quote(text: str | bytes) -> str:
    """A protobuf string literal; non-printable and non-ASCII bytes as octal escapes."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    out = []
    for byte in data:
        char = chr(byte)
        if char in "\"\\":
            out.append("\\" + char)
        elif 0x20 <= byte < 0x7F:
            out.append(char)
        else:
            out.append(f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


def option_items(options: Message, skip: tuple[str, ...] = ()) -> list[str]:
    """``name = value`` for each option set, in field-number order."""
    if len(UnknownFieldSet(options)):
        raise UnsupportedProto(f"unknown fields in {options.DESCRIPTOR.name}")
    items = []
    for field, value in options.ListFields():
        if field.name in skip:
            continue
        if field.is_extension or field.is_repeated:
            raise UnsupportedProto(f"option {field.full_name} (custom or repeated)")
        items.append(f"{field.name} = {option_value(field, value)}")
    return items


def option_value(field: FieldDescriptor, value: object) -> str:
    if field.type == FieldDescriptor.TYPE_ENUM:
        return field.enum_type.values_by_number[value].name
    if field.type == FieldDescriptor.TYPE_BOOL:
        return "true" if value else "false"
    if field.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
        return quote(value)
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        raise UnsupportedProto(f"message-valued option {field.full_name}")
    return repr(value)


def bracket(items: list[str]) -> str:
    return f" [{', '.join(items)}]" if items else ""


def reserved_lines(ranges: list, names: list[str], max_end: int, inclusive: bool) -> list[str]:
    lines = []
    if ranges:
        parts = []
        for reserved in ranges:
            last = reserved.end if inclusive else reserved.end - 1
            if last == (max_end if inclusive else max_end - 1):
                parts.append(f"{reserved.start} to max")
            elif last == reserved.start:
                parts.append(str(reserved.start))
            else:
                parts.append(f"{reserved.start} to {last}")
        lines.append(f"reserved {', '.join(parts)};")
    if names:
        lines.append(f"reserved {', '.join(quote(name) for name in names)};")
    return lines


def tidy(lines: list[str]) -> list[str]:
    """Drop blank lines that close a block, repeat, or end the file."""
    kept: list[str] = []
    for line in lines:
        if kept and not kept[-1] and (not line or line.strip() == "}"):
            kept.pop()
        kept.append(line)
    while kept and not kept[-1]:
        kept.pop()
    return kept


class FilePrinter:
    """Turns one FileDescriptorProto into .proto text."""

    def __init__(self, file: descriptor_pb2.FileDescriptorProto) -> None:
        if file.syntax not in ("", "proto2", "proto3"):
            raise UnsupportedProto(f"{file.name}: syntax {file.syntax!r}")
        self.file = file
        self.proto3 = file.syntax == "proto3"
        self.lines: list[str] = []

    def emit(self, depth: int, text: str = "") -> None:
        self.lines.append(INDENT * depth + text if text else "")

    def render(self) -> str:
        file = self.file
        self.emit(0, f'syntax = "{"proto3" if self.proto3 else "proto2"}";')
        self.emit(0)
        if file.package:
            self.emit(0, f"package {file.package};")
            self.emit(0)
        self.imports()
        for item in option_items(file.options):
            self.emit(0, f"option {item};")
        if file.options.ListFields():
            self.emit(0)
        for message in file.message_type:
            self.message(message, 0)
        for enum in file.enum_type:
            self.enum(enum, 0)
        self.extensions(file.extension, 0)
        for service in file.service:
            self.service(service)
        return "\n".join(tidy(self.lines)) + "\n"

    def imports(self) -> None:
        public, weak = set(self.file.public_dependency), set(self.file.weak_dependency)
        for index, dependency in enumerate(self.file.dependency):
            kind = "public " if index in public else "weak " if index in weak else ""
            self.emit(0, f"import {kind}{quote(dependency)};")
        if self.file.dependency:
            self.emit(0)

    def message(self, message: DescriptorProto, depth: int) -> None:
        self.emit(depth, f"message {message.name} {{")
        inner = depth + 1
        for item in option_items(message.options):
            self.emit(inner, f"option {item};")
        for enum in message.enum_type:
            self.enum(enum, inner)
        entries = {nested.name: nested for nested in message.nested_type
                   if nested.options.map_entry}
        self.fields_and_nested_types(message, entries, inner)
        self.extension_ranges(message, inner)
        self.extensions(message.extension, inner)
        for line in reserved_lines(message.reserved_range, message.reserved_name,
                                   MESSAGE_MAX_NUMBER, inclusive=False):
            self.emit(inner, line)
        self.emit(depth, "}")
        self.emit(depth)

    def fields_and_nested_types(self, message: DescriptorProto,
                                entries: dict[str, DescriptorProto], depth: int) -> None:
        """Nested messages in order; a map entry marks where its field must already stand."""
        fields = list(message.field)
        entry_field = {self.entry_name(field): index for index, field in enumerate(fields)
                       if self.entry_name(field) in entries}
        printed = 0
        for nested in message.nested_type:
            if nested.name in entries:
                end = entry_field.get(nested.name)
                if end is None:
                    raise UnsupportedProto(f"map entry {nested.name} without its field")
                printed = self.field_run(message, fields, printed, end + 1, entries, depth)
            else:
                self.message(nested, depth)
        self.field_run(message, fields, printed, len(fields), entries, depth)

    def entry_name(self, field: FieldProto) -> str:
        if field.type != FieldProto.TYPE_MESSAGE or field.label != FieldProto.LABEL_REPEATED:
            return ""
        return field.type_name.rsplit(".", 1)[-1]

    def field_run(self, message: DescriptorProto, fields: list[FieldProto], start: int,
                  end: int, entries: dict[str, DescriptorProto], depth: int) -> int:
        """Print fields[start:end], wrapping runs of one real oneof in its block."""
        index = start
        while index < end:
            field = fields[index]
            if field.HasField("oneof_index") and not field.proto3_optional:
                oneof = field.oneof_index
                run_end = index
                while (run_end < len(fields) and fields[run_end].HasField("oneof_index")
                       and fields[run_end].oneof_index == oneof):
                    run_end += 1
                self.oneof(message, oneof, fields[index:run_end], depth)
                index = run_end
            else:
                self.field(field, entries, depth)
                index += 1
        return index

    def oneof(self, message: DescriptorProto, index: int, fields: list[FieldProto],
              depth: int) -> None:
        decl = message.oneof_decl[index]
        if sum(f.HasField("oneof_index") and f.oneof_index == index
               for f in message.field) != len(fields):
            raise UnsupportedProto(f"oneof {decl.name} fields are not contiguous")
        self.emit(depth, f"oneof {decl.name} {{")
        for item in option_items(decl.options):
            self.emit(depth + 1, f"option {item};")
        for field in fields:
            self.field(field, {}, depth + 1, in_oneof=True)
        self.emit(depth, "}")

    def field(self, field: FieldProto, entries: dict[str, DescriptorProto], depth: int,
              in_oneof: bool = False) -> None:
        entry = entries.get(self.entry_name(field))
        if entry is not None:
            key, value = entry.field
            declaration = f"map<{self.type_of(key)}, {self.type_of(value)}>"
        else:
            declaration = f"{self.label_of(field, in_oneof)}{self.type_of(field)}"
        items = []
        if field.HasField("default_value"):
            items.append(f"default = {self.default_of(field)}")
        if field.HasField("json_name"):
            items.append(f"json_name = {quote(field.json_name)}")
        items += option_items(field.options)
        self.emit(depth, f"{declaration} {field.name} = {field.number}{bracket(items)};")

    def label_of(self, field: FieldProto, in_oneof: bool) -> str:
        if in_oneof:
            return ""
        if field.label == FieldProto.LABEL_REPEATED:
            return "repeated "
        if self.proto3:
            return "optional " if field.proto3_optional else ""
        return LABELS[field.label] + " "

    def type_of(self, field: FieldProto) -> str:
        if field.type == FieldProto.TYPE_GROUP:
            raise UnsupportedProto(f"group field {field.name}")
        if field.type in (FieldProto.TYPE_MESSAGE, FieldProto.TYPE_ENUM):
            return field.type_name
        return SCALAR_TYPES[field.type]

    def default_of(self, field: FieldProto) -> str:
        if field.type == FieldProto.TYPE_STRING:
            return quote(field.default_value)
        if field.type == FieldProto.TYPE_BYTES:  # already C-escaped in the descriptor
            return f'"{field.default_value}"'
        return field.default_value

    def enum(self, enum: EnumProto, depth: int) -> None:
        self.emit(depth, f"enum {enum.name} {{")
        for item in option_items(enum.options):
            self.emit(depth + 1, f"option {item};")
        for value in enum.value:
            items = option_items(value.options)
            self.emit(depth + 1, f"{value.name} = {value.number}{bracket(items)};")
        for line in reserved_lines(enum.reserved_range, enum.reserved_name,
                                   ENUM_MAX_NUMBER, inclusive=True):
            self.emit(depth + 1, line)
        self.emit(depth, "}")
        self.emit(depth)

    def extension_ranges(self, message: DescriptorProto, depth: int) -> None:
        for extension_range in message.extension_range:
            if extension_range.HasField("options"):
                raise UnsupportedProto(f"options on an extension range of {message.name}")
            start, last = extension_range.start, extension_range.end - 1
            end = "max" if extension_range.end == MESSAGE_MAX_NUMBER else str(last)
            self.emit(depth, f"extensions {start if last == start else f'{start} to {end}'};")

    def extensions(self, extensions: list[FieldProto], depth: int) -> None:
        for extension in extensions:  # one block each keeps their order
            self.emit(depth, f"extend {extension.extendee} {{")
            self.field(extension, {}, depth + 1)
            self.emit(depth, "}")
            self.emit(depth)

    def service(self, service: descriptor_pb2.ServiceDescriptorProto) -> None:
        self.emit(0, f"service {service.name} {{")
        for item in option_items(service.options):
            self.emit(1, f"option {item};")
        for method in service.method:
            request = ("stream " if method.client_streaming else "") + method.input_type
            response = ("stream " if method.server_streaming else "") + method.output_type
            signature = f"rpc {method.name}({request}) returns ({response})"
            items = option_items(method.options)
            if not items:
                self.emit(1, signature + ";")
                continue
            self.emit(1, signature + " {")
            for item in items:
                self.emit(2, f"option {item};")
            self.emit(1, "}")
        self.emit(0, "}")
        self.emit(0)


def proto_source(file: descriptor_pb2.FileDescriptorProto) -> str:
    """The .proto text of a file descriptor."""
    return FilePrinter(file).render()
