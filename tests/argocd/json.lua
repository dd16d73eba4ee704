-- A tiny JSON decoder for the health-check harness: objects become tables, arrays become
-- sequences, null becomes nil (as Argo CD hands a missing or null field to a health script),
-- integral numbers become integers where the Lua version has them. Lua 5.1 to 5.4.
local M = {}

local escapes = { ['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b", f = "\f", n = "\n", r = "\r", t = "\t" }

local function utf8_char(cp)
  if cp < 0x80 then
    return string.char(cp)
  elseif cp < 0x800 then
    return string.char(0xC0 + math.floor(cp / 0x40), 0x80 + cp % 0x40)
  elseif cp < 0x10000 then
    return string.char(0xE0 + math.floor(cp / 0x1000), 0x80 + math.floor(cp / 0x40) % 0x40, 0x80 + cp % 0x40)
  end
  return string.char(0xF0 + math.floor(cp / 0x40000), 0x80 + math.floor(cp / 0x1000) % 0x40,
    0x80 + math.floor(cp / 0x40) % 0x40, 0x80 + cp % 0x40)
end

function M.decode(text)
  local pos = 1

  local function fail(what)
    error(string.format("JSON: %s at offset %d", what, pos), 0)
  end

  local function skip()
    pos = string.find(text, "[^ \t\r\n]", pos) or (#text + 1)
  end

  local value

  local function str()
    pos = pos + 1 -- opening quote
    local parts = {}
    while true do
      local c = string.sub(text, pos, pos)
      if c == "" then
        fail("unterminated string")
      elseif c == '"' then
        pos = pos + 1
        return table.concat(parts)
      elseif c == "\\" then
        local e = string.sub(text, pos + 1, pos + 1)
        if e == "u" then
          local cp = tonumber(string.sub(text, pos + 2, pos + 5), 16) or fail("bad \\u escape")
          pos = pos + 6
          if cp >= 0xD800 and cp < 0xDC00 and string.sub(text, pos, pos + 1) == "\\u" then
            local lo = tonumber(string.sub(text, pos + 2, pos + 5), 16) or fail("bad \\u escape")
            cp = 0x10000 + (cp - 0xD800) * 0x400 + (lo - 0xDC00)
            pos = pos + 6
          end
          parts[#parts + 1] = utf8_char(cp)
        else
          parts[#parts + 1] = escapes[e] or fail("bad escape")
          pos = pos + 2
        end
      else
        local stop = string.find(text, '["\\]', pos) or (#text + 1)
        parts[#parts + 1] = string.sub(text, pos, stop - 1)
        pos = stop
      end
    end
  end

  function value()
    skip()
    local c = string.sub(text, pos, pos)
    if c == "{" then
      pos = pos + 1
      local obj = {}
      skip()
      if string.sub(text, pos, pos) == "}" then
        pos = pos + 1
        return obj
      end
      while true do
        skip()
        if string.sub(text, pos, pos) ~= '"' then
          fail("expected a key")
        end
        local key = str()
        skip()
        if string.sub(text, pos, pos) ~= ":" then
          fail("expected ':'")
        end
        pos = pos + 1
        obj[key] = value()
        skip()
        local sep = string.sub(text, pos, pos)
        pos = pos + 1
        if sep == "}" then
          return obj
        elseif sep ~= "," then
          fail("expected ',' or '}'")
        end
      end
    elseif c == "[" then
      pos = pos + 1
      local arr, n = {}, 0
      skip()
      if string.sub(text, pos, pos) == "]" then
        pos = pos + 1
        return arr
      end
      while true do
        n = n + 1
        arr[n] = value()
        skip()
        local sep = string.sub(text, pos, pos)
        pos = pos + 1
        if sep == "]" then
          return arr
        elseif sep ~= "," then
          fail("expected ',' or ']'")
        end
      end
    elseif c == '"' then
      return str()
    elseif string.sub(text, pos, pos + 3) == "true" then
      pos = pos + 4
      return true
    elseif string.sub(text, pos, pos + 4) == "false" then
      pos = pos + 5
      return false
    elseif string.sub(text, pos, pos + 3) == "null" then
      pos = pos + 4
      return nil
    end
    local num = string.match(text, "^-?%d+%.?%d*[eE]?[-+]?%d*", pos)
    if num == nil or num == "" then
      fail("unexpected character")
    end
    pos = pos + #num
    local n = tonumber(num) or fail("bad number " .. num)
    if math.tointeger ~= nil and math.tointeger(n) ~= nil then
      n = math.tointeger(n)
    end
    return n
  end

  local result = value()
  skip()
  if pos <= #text then
    fail("trailing characters")
  end
  return result
end

return M
